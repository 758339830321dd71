"""Audio as a modality: log-mel features, spoken-digit and real-speech datasets, word error rate."""
