"""One module per asset, its checks beside it."""
