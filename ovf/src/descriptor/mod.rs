//! The OVF 1.x descriptor (`.ovf`): model, parser, writer, validation and builder.
