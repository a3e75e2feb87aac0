"""The director: config, the map layout, the XDP data plane and the daemon around it."""
