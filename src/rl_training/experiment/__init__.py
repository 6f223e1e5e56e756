"""Logging: the ``Logger``/``Sink`` interfaces, ``CompositeLogger`` and the built-in sinks."""
