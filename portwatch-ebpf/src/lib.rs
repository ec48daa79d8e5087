#![no_std]
// This file exists to enable the library target, as in the aya-template.
