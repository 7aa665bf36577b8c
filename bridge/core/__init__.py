"""The pure core: the settings' schema, topic matching, mapping plans,
validation, normalization, the delivery and command-offset rules, the MQTT
codec, the stream's contracts.

Nothing in this package opens a socket, starts a thread, reads a file or the
clock, or imports the bridge outside this package: the caller passes bytes,
settings and the current time in, and gets records, events and actions back.
That keeps every rule testable without a broker, in the style of h11 and
wsproto; tests/unit/test_layout.py holds the package to it.
"""
