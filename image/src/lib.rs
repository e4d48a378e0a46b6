//! Slot layout, boot state and update bundle formats of the box image.
//!
//! Not built yet: arrives with the image and updater capability.
