"""Built-in real datasets: Fashion-MNIST (+ captions), scikit-learn digits, spoken digits, photos
and real speech (`mmcompress.data.registry.load_dataset`)."""
