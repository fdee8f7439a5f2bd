"""What a model is trained and scored for, beyond classification: detection and segmentation
(``shapes``: the built-in synthetic data both use)."""
