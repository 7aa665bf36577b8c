"""The pure core: topic matching, mapping plans, validation, normalization.

Nothing in this package opens a socket, starts a thread or reads the clock: the
caller passes bytes and the current time in, and gets records back.  That keeps
every rule testable without a broker, in the style of h11 and wsproto.
"""
