"""Training: the Keras model that owns RefineDet's loss, optimizer, schedules, callbacks."""
