"""What an operator reads: health and readiness (:mod:`bridge.ops.health`), the
Prometheus metrics (:mod:`bridge.ops.metrics`), the structured logs
(:mod:`bridge.ops.logs`) and the worst-case memory computed from the settings
(:mod:`bridge.ops.memory_budget`).
"""
