"""CLI sub-commands, one module each (discovered by :mod:`bayes_simfluence.cli`)."""
