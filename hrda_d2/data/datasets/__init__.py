"""Dataset registration (lazy: nothing touches the disk until a split is loaded)."""
