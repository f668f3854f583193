//! meshlens-ui: the built-in web page (topology, service panels, trace
//! search and waterfall). Its static assets will be embedded here and served
//! by an axum router; it depends on nothing but axum. Not built yet (issue 7).
