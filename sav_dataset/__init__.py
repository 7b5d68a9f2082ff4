"""SA-V / LVOS / DAVIS evaluation utilities."""
