"""The smart router: channel health, fees and the routing policy (coming with the router issue)."""
