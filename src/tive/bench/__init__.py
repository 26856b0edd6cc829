"""`tive bench`: a CPU miniature of the paper's experiment (world, base model, methods, training, report)."""
