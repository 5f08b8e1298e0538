"""Cross-cutting pieces every role of the platform shares: typed settings and structured logging."""
