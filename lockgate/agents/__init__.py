"""Built-in agents. Importing this package registers them in `lockgate.spec.registry`."""

from lockgate.agents import incident, refund

__all__ = ["incident", "refund"]
