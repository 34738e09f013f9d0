"""Learning-rate schedules, validation callbacks, feature caches and fitting one fold."""
