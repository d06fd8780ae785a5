"""Load forecasting, the minimum-energy plan (MILP) and the planner loop; ``contract`` is the wire schema."""
