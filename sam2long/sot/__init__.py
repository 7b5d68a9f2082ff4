"""Single-object / benchmark-toolkit integrations of our trackers (VOT over TraX, ...)."""
