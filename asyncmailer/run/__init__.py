"""Running a campaign: policy, limits, scheduling, loading and the dispatcher."""
