//! streamOptimized VMDK: a streaming writer from raw and a reader back to raw.
