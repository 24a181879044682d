"""lockgate: governed tool calls for autonomous agent workflows on Temporal, Vault and Cedar."""

__version__ = "0.1.0"
