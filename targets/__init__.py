"""The deployment side: one module per target, the registry (targets.registry), and what both
sides share (targets.errors, targets.tf_setup). This package depends on nothing in factory/."""
