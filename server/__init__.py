"""voxgate's HTTP and WebSocket edge: app factory, settings, routes, wire protocol, auth, errors."""
