"""Audio frames and formats, VAD, turn-taking and the per-connection session loop.

Knows nothing of HTTP or WebSocket types; talks to a backbone through `voxgate.model.Backbone`.
"""
