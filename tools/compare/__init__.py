"""Plain helpers of the ai supervisor's compare_models: how far model answers agree."""
