"""Plain helpers of the workflow supervisor: templates, conditions and configured commands."""
