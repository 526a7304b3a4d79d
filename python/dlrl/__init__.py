"""DLRL: differentiable low-rank matrix completion."""
