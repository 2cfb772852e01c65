"""Live updates: publishing changes to the channel layer, the one module that shapes every live
message, and the transports that carry them (WebSocket consumer, Server-Sent Events and
long-polling outside Django's request thread)."""
