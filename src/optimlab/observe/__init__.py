"""What watches a run without changing it: progress on the console, curves.png,
TensorBoard events. All are fed from the engine's one metrics record (EpochResult)."""
