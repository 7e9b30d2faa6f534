from pathseg.metrics.confusion import SegmentationMetrics, confusion_matrix, metrics_from_confusion

__all__ = ["SegmentationMetrics", "confusion_matrix", "metrics_from_confusion"]
