"""Console entry points: clipa-plan, clipa-run, clipa-report."""
