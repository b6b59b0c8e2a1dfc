"""The sidecar daemon: one sampler per host, spans from every process on it."""
