from pathseg.models.factory import DECODERS, ENCODERS, SegModel, create_model, load_encoder_weights

__all__ = ["DECODERS", "ENCODERS", "SegModel", "create_model", "load_encoder_weights"]
