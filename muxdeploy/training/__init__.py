"""Small DataMUX trainers for the demo, the tests and quick experiments (CPU, a few threads), and their data.

Every batch is packed with the runtime's own packer (`muxdeploy.runtimes.packing`), so a trained model has seen
instances padded, truncated and grouped exactly as a deployed runtime will feed them.

- `retrieval`: the paper's warm-up task; a trained retrieval model is the runtime's packing oracle.
- `classifier`: sequence classification on token ids (optionally with the retrieval loss as an auxiliary).
- `sentiment`: the sentiment recipe (`muxdeploy train`, the demo) over `classifier`.
- `ner`: token classification of pre-split words (WordPiece alignment, a small trainer).
- `vision`: vision DataMUX on MNIST.
- `datasets`, `tokenizer`: registry-fetched data and the BERT tokenizer they use.
- `loop`: what the retrieval and classifier loops share (threads, optimizer, progress bar, a fresh model).
"""
