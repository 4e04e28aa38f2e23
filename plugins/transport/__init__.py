"""The Stripe forwarding transport (``stripe``) and the connection-token providers (``tokens``)."""

__all__ = ["stripe", "tokens"]
