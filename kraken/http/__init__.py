"""HTTP plumbing shared by every component: app factory, middleware, client, serving."""
