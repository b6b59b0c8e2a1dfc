"""The in-process side of footprint: what runs inside the user's process.

``spans`` is the hot path's contract (``SpanQueue``: ``begin``/``end``; ``SpanSink``: what
a tracker uses) and the one span-end type; ``local`` measures in the process (sensors,
sampler, attribution, writer); ``remote`` sends spans to the host's daemon instead, over a
``transport`` found by ``discovery``, keeping what it sent in ``acks`` until the daemon
acknowledges it (``outbox`` cleans and batches them; ``protocol`` is the wire format,
shared with the daemon); ``lifecycle`` is the one place for the process-wide hooks (fork,
exit, signals); ``presence`` keeps two measuring processes off one GPU. Nothing here
imports the daemon, the proxy or the reports: they build on this.
"""
