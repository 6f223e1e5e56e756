"""The built-in sinks, each registered through the ``rl_training_log_sinks`` hook."""
