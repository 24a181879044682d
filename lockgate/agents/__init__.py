"""Built-in agents. Importing this package registers them in `lockgate.spec.registry`."""

from lockgate.agents import refund

__all__ = ["refund"]
