"""The planner: search recipes under a budget with the cost models; write the best one."""
