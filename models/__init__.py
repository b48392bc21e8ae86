"""Video action recognition backbones with SoftPool, max or avg pooling chosen by config."""
