"""The in-process side of footprint: what runs inside the user's process.

``local`` measures in the process (sensors, sampler, attribution, writer); ``remote``
sends spans to the host's daemon instead (``protocol`` is their wire format, shared with
the daemon); ``lifecycle`` is the one place for the process-wide hooks (fork, exit,
signals); ``presence`` keeps two measuring processes off one GPU. Nothing here imports
the daemon, the proxy or the reports: they build on this.
"""
