"""Early exit (LRA-EE): SSA heads, gates, INR-based layer choice, thresholds, the runtime policy."""
