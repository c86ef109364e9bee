//! SCIM 2.0 (RFC 7643/7644) wire layer, free of HTTP and storage: the filter and PATCH-path
//! grammar (`filter`), the PATCH applier (`patch`), resources and discovery documents
//! (`resource`), and the error kinds SCIM clients understand (`ScimError`).

pub mod filter;
