"""What an operator reads: health and readiness (:mod:`bridge.ops.health`), the
Prometheus metrics (:mod:`bridge.ops.metrics`) and the worst-case memory
computed from the settings (:mod:`bridge.ops.memory_budget`).  Read-only views
of the running parts, which reach them through callables the daemon fills in.
The logs are an adapter every part uses (:mod:`bridge.io.logs`).
"""
