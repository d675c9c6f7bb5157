"""Synthetic data sets with known ground truth: Pillow scenes for the llava-scenes model, prompt sets."""
