"""Build-time conversion of M2M100 checkpoints into the service's model directory."""
